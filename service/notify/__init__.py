"""Notifications: each change told to the subscriptions that match it (webhooks, SNS topics, SSM parameters)."""
