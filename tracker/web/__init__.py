"""The web pages people open first (issue 14): server-rendered by the API process, at `/`."""
