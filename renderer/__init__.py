"""Turns -> page images. Pure functions: the same turns, layout and fonts give the same PNG bytes."""
