"""Notifications: `notify-watchers` fans an event out to its watchers, `send-notification`
delivers one notification to one recipient on one channel (email or signed webhook), once.

Pure parts: `events` (what each event is), `render` (templates' context and rendering),
`tokens` (unsubscribe links), `ssrf` (which webhook targets are allowed). I/O at the edges:
`recipients` and `ledger` (the database), `email` (SMTP), `webhook` (HTTP), and the two tasks
in `fanout` and `send`.
"""
