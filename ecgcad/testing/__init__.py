"""In-package fakes and test-material writers shared by the test suite and integrators."""
