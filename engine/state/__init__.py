"""What the engine keeps: the SQLite store and the directory of registrations, rates and bans."""
