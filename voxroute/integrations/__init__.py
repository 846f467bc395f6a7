"""voxroute's parts for other voice frameworks (each an optional extra; the core never imports them)."""
