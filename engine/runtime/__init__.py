"""The application runtime: rules, scenario sessions, rooms, tokens and the dial-out policy."""
