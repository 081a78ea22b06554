"""carom.model"""
