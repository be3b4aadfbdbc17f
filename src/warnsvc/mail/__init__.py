"""Email plumbing shared by the email channels and the subscription pages.

addresses (warnsvc.addresses)  checks of addresses and display names from untrusted input
filters.py   which events a subscriber wants (pure)
compose.py   Jinja2 templates -> multipart text + HTML messages with RFC 8058 headers
smtp.py      a small pool of reused aiosmtplib connections, a rate limit, error classes
store.py     subscribers, confirmations, digests and operator notices in the database
"""
