"""carom.lab"""
