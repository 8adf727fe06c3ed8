"""`ckptrace inspect`: an interactive image browser. Only `inspect.main` imports textual, so the
state and view modules stay importable (and testable) without a terminal."""
