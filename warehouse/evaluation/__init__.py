"""Re-evaluation against OpenAI-compatible endpoints: targets (`targets`), the bounded, retrying client
(`client`)."""
