"""Re-evaluation against OpenAI-compatible endpoints: targets (`targets`), the bounded, retrying client
(`client`), offline metrics (`metrics`), resumable runs recorded in `eval_runs` (`runs`), an optional LLM judge
recorded in `eval_judgements` (`judge`), the lake's online evidence for a run's model and prompt version
(`online`), and comparing runs and gating a release on them (`compare`). Settings: `settings`."""
