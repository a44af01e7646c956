"""What tests share that is not a fixture: message factories, the from-scratch reference
model, producing and reading topics, waiting on the API. Fixtures are in tests/plugins/."""
