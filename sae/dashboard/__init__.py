"""Plotly figures from typed data, assembled into offline HTML pages."""
