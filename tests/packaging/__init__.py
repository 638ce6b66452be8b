"""How repom installs: declared bounds, locks, a bare install, resolution beside old releases."""
