"""Names shared by the bridge (which enqueues) and the workers (which run)."""

ANALYZE = "analyze"  # the outbox job: fan out every analysis of one call

#: analysis kind -> the queue that runs it (a worker may take any subset)
QUEUES = {
    "transcript": "transcribe",  # Whisper over the recordings: the heavy one
    "summary": "llm",
    "sentiment": "analytics",
    "topics": "analytics",
    "cost": "analytics",
    "qa": "analytics",  # after "transcript": it reads the ASR confidence
}
KINDS = tuple(QUEUES)
ANALYZE_QUEUE = "calls"
ALL_QUEUES = (ANALYZE_QUEUE, *sorted(set(QUEUES.values())))
COMPLETED_CHANNEL = "voiceos:calls:completed"
