"""The ground floor every other package stands on: config, paths, tracking, registry writes, metrics."""
