"""carom.bpf"""
