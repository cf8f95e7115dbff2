"""Fixtures that tests, benchmarks and the demo share: realistic event streams built from real public data
(`corpus`), drift scenarios (`scenarios`), landing events without Kafka (`land`), and stand-ins for the services
flywheel talks to (`webhook`: a recording Slack webhook). Nothing in the product imports this package."""
