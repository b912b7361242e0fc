"""`entrain correlate`: per-token entropy against STOPS, and its analysis."""
