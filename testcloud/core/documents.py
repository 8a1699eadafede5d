"""Documents (one.document.*): generic JSON-in-a-template objects; OneFlow keeps its services (type 100)
and service templates (type 101) in them."""

from __future__ import annotations

from testcloud.core import errors
from testcloud.core.errors import OneError
from testcloud.core.objects import Document
from testcloud.core.pool import PoolStore
from testcloud.core.validate import parse_template


class DocumentPool:
    def __init__(self, db: PoolStore) -> None:
        self.db = db

    def document_allocate(self, text_in: str, doc_type: int) -> int:
        tmpl = parse_template(text_in)
        with self.db.lock:
            name = tmpl.get("NAME") or ""
            if len(name) > 128:  # Document::insert: any other name is fine, an empty one is generated
                raise OneError(errors.INTERNAL, "NAME is too long; max length is 128 chars.")
            tmpl.erase("NAME")
            oid = self.db.next_id("document")
            doc = Document(id=oid, name=name or f"document-{oid}", type=doc_type, template=tmpl)
            self.db.insert(doc, "document")
            return doc.id

    def document_info(self, oid: int) -> str:
        with self.db.lock:
            return self.db.get("document", oid, errors.DOCUMENT).to_xml()

    def document_update(self, oid: int, text_in: str, append: int) -> int:
        return self.db.update_template("document", oid, errors.DOCUMENT, text_in, append).id

    def document_delete(self, oid: int) -> int:
        with self.db.lock:
            self.db.drop(self.db.get("document", oid, errors.DOCUMENT))
            return oid

    def documentpool_info(self, filter_flag: int, start: int, end: int, doc_type: int) -> str:
        docs = (d for d in self.db.pools["document"].values() if d.type == doc_type)
        return self.db.pool_xml("DOCUMENT_POOL", docs, filter_flag, start, end)
