"""The keystore updater: Secret directory → elasticsearch.keystore, then reload secure settings."""
