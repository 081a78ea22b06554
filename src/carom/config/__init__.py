"""carom.config"""
