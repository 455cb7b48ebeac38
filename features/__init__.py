"""scf-risk features: raw tables -> validated data -> point-in-time feature panel (+ labels)."""
