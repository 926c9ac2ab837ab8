"""Stand-ins for elasticsearch-keystore and Elasticsearch, for tests and the demo."""
