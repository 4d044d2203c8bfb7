"""Staged rollouts: flash a fleet's canaries, judge them by their live metrics, promote in waves or roll back.

plan.py (canaries, waves, durations, criteria), journal.py (append-only JSON lines, what a re-run resumes from),
watch.py (scraping each daemon's /metrics and /healthz, or a Prometheus server), judge.py (the verdict, one line
per device), run.py (the rollout itself).
"""
