"""One module per tab: its handlers (layout and wiring stay in ui/app.py for now)."""
