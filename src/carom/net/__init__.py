"""carom.net"""
