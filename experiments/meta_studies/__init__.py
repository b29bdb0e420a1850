"""Studies of the meta generator and of the adaptation start (issue logs live in docs/)."""
