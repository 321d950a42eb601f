"""The data contract of the platform: feature views, Iceberg table declarations, and their evolution."""
