"""Documents, search and embeddings: request/response models. Limits that depend on configuration (metadata
and filter bounds, document length, the write budget) are checked by serve_app/vector/limits.py, which the
routes, the VectorStore deployment and the ingest job share; shapes and types are checked here."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictStr, StringConstraints, field_validator

from serve_app.config.names import SearchMode

# Metadata values are scalars so that a filter can match them exactly. Keys are plain names: the store
# addresses them as payload paths, where a dot or bracket would mean nesting.
# Integers are 64-bit in the store.
MetaValue = str | Annotated[int, Field(ge=-(2**63), le=2**63 - 1)] | bool | float
MetaKey = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_-]{1,64}$")]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Document(_Model):
    id: StrictStr = Field(..., min_length=1, max_length=256, description="Caller-chosen id; re-ingesting replaces.")
    text: StrictStr = Field(..., description="Plain text (markdown is fine).")
    metadata: dict[MetaKey, MetaValue] = Field(
        default_factory=dict, description="Scalar fields a search can filter on; keys: letters, digits, _ and -. "
        "Stored once per document. At most vector.max_metadata_keys keys, string values of at most "
        "vector.max_metadata_value_chars characters, vector.max_metadata_bytes as JSON.")

    @field_validator("text")
    @classmethod
    def _not_blank(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("text must not be empty or whitespace")
        return v


class DocumentSection(_Model):
    text: str
    page: int | None = Field(None, ge=1)
    section: str | None = Field(None, max_length=4096)


class LocatedDocument(Document):
    """A document read from a file (the ingest job, /v1/files): its text also as located sections, each
    chunked on its own so its chunks know their page or heading path. Not part of POST /v1/documents."""

    sections: list[DocumentSection] | None = None


class IngestRequest(_Model):
    documents: list[Document] = Field(..., min_length=1)


class IngestedDocument(BaseModel):
    id: str
    chunks: int
    unchanged: bool = Field(False, description="The same content was stored already: nothing was written.")
    version: str | None = Field(None, description="The document's version: a hash of its content.")


class IngestResponse(BaseModel):
    object: Literal["ingest.result"] = "ingest.result"
    documents: list[IngestedDocument]


class DocumentEntry(BaseModel):
    id: str
    object: Literal["document"] = "document"
    metadata: dict[str, Any]
    chunks: int


class DocumentList(BaseModel):
    """``GET /v1/documents``: one page of the tenant's documents, as OpenAI pages its lists."""

    object: Literal["list"] = "list"
    data: list[DocumentEntry]
    first_id: str | None = None
    last_id: str | None = Field(None, description="Pass it as ``after`` for the next page.")
    has_more: bool


# The search modes, declared once: the requests, the VectorStore deployment, the store and RAG take this type.


class SearchRequest(_Model):
    query: StrictStr = Field(..., min_length=1)
    top_k: int = Field(5, description="How many chunks to return (1..vector.max_top_k).")
    filter: dict[MetaKey, MetaValue] | None = Field(
        None, description="Metadata equality; every key must match. Bounded like a document's metadata, and may "
        "match at most vector.max_filter_documents documents.")
    score_threshold: float | None = Field(None, ge=-1.0, le=1.0, description="Drop hits scoring lower (cosine; "
                                          "dense mode only).")
    mode: SearchMode | None = Field(None, description="'dense' (the embedder), 'keyword' (BM25) or 'hybrid' (both, "
                                    "fused by reciprocal rank); default: vector.search_mode.")

    @field_validator("query")
    @classmethod
    def _not_blank(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("query must not be empty or whitespace")
        return v


class SearchHit(BaseModel):
    document_id: str
    chunk_id: str
    position: int = Field(..., description="The chunk's position in its document (0 first).")
    text: str
    score: float = Field(..., description="Cosine similarity (dense), BM25 (keyword) or the fused rank score (hybrid).")
    metadata: dict[str, Any]
    page: int | None = Field(None, description="The chunk's page in its PDF (1 first); None for other documents.")
    section: str | None = Field(None, description="The headings above the chunk in its HTML, Word or Markdown file, "
                                "from the top, joined by ' > '.")


class SearchResponse(BaseModel):
    object: Literal["search.result"] = "search.result"
    results: list[SearchHit]


class EmbeddingRequest(_Model):
    """OpenAI's embeddings request (text inputs)."""

    model_config = ConfigDict(extra="ignore")  # OpenAI SDKs may send fields this server does not use (user).
    input: StrictStr | list[StrictStr] = Field(..., description="A string or a list of strings.")
    model: str | None = None
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(None, description="Only the model's own dimension is supported.")
