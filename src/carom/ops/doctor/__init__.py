"""`carom doctor`: checks of what the field notes say goes wrong around a director."""
