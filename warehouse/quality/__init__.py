"""Quality gates: expectation suites (`suites`) validated with Great Expectations over landed windows (`gates`),
their reports (`report`) and the stage's settings (`settings`)."""
