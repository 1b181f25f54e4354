"""The conversation: turn-taking, barge-in, the turn loop, latency marks."""
