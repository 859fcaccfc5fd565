"""Shared vocabulary of FlowRouter: config, schemas, workflows, embeddings, metrics.

Everything else imports from here; this package imports nothing of ours.
"""
