"""Knowledge base from operation documents (FlowXpert Module 1): chunks in a vector base, incidents in a graph.

    documents.py  load .md/.txt documents, tagged by their folder
    markdown.py   sections, blocks, steps and references in loosely written Markdown
    chunking.py   heading- then size-based chunks with stable ids and offsets
    extract.py    incidents per document: deterministic runbook extractor, small-LLM extractor
    graph.py      merge and refine incident nodes, link related incidents
    store.py      versioned on-disk base with an atomically replaced `current` pointer
    build.py      build_knowledge_base / add_documents / ensure_knowledge_base
    retrieve.py   KnowledgeBase.open(...).retrieve(query, scope) -> RetrievedContext
"""
