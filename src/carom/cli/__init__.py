"""carom.cli"""
