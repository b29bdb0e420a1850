"""The paper's reproductions: the benchmark of Tab. 2/12, Tab. 4, Fig. 3, Fig. 4, Fig. 5."""
