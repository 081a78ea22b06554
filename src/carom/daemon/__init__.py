"""carom.daemon"""
