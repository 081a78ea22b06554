"""carom.sched"""
