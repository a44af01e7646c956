"""The Kafka -> PostgreSQL process: validates status events and stores them."""
