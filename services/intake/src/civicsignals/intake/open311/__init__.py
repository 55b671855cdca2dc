"""Open311 GeoReport v2 with the mySociety ``servicerequestupdates`` extension (DESIGN §5)."""
