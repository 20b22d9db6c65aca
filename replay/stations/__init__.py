"""Station-coordinate tables (CSV) for the built-in scenarios; see README.md here.

An (empty) package so that setuptools ships the CSV files as package data.
"""
