"""The agent: the tool loop with Claude and the messages of each request."""
