"""VM drivers of the test cloud: one small interface (base.VMDriver), several implementations."""
