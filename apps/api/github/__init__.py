"""GitHub integration: what a webhook delivery means for the service (:mod:`apps.api.github.events`)."""
