"""Re-evaluation against OpenAI-compatible endpoints: targets (`targets`), the bounded, retrying client
(`client`), offline metrics (`metrics`), resumable runs recorded in `eval_runs` (`runs`), and comparing runs and
gating a release on them (`compare`). Settings: `settings`."""
