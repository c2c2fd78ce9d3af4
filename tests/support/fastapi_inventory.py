"""A small inventory API written with FastAPI, for the OpenAPI import test.

Its generated /openapi.json (OpenAPI 3.1) has path, query and header parameters, a JSON
request body and responses whose schemas are $refs to components, and two security
schemes: an API key in the X-API-Key header and HTTP basic. One operation takes a
cookie, which the importer cannot map.

Usage: python fastapi_inventory.py PORT
"""

import secrets
import sys

import uvicorn
from fastapi import Cookie, Depends, FastAPI, Header, HTTPException, Query, Security
from fastapi.security import APIKeyHeader, HTTPBasic, HTTPBasicCredentials
from pydantic import BaseModel, Field

API_KEY = "inv-key-7f3a"
USER, PASSWORD = "alice", "s3cret pass"

app = FastAPI(title="inventory", version="1.0.0")
api_key_header = APIKeyHeader(name="X-API-Key")
basic = HTTPBasic()

ITEMS = {
    7: {"id": 7, "name": "lamp", "price": 12.5, "tags": ["home", "light"], "store": "north"},
    8: {"id": 8, "name": "desk", "price": 120.0, "tags": ["home", "office"], "store": "south"},
    9: {"id": 9, "name": "pen", "price": 1.25, "tags": ["office"], "store": "north"},
}


class NewItem(BaseModel):
    name: str = Field(min_length=1)
    price: float = Field(gt=0)
    tags: list[str] = []


class Item(BaseModel):
    id: int
    name: str
    price: float
    tags: list[str]
    store: str


class ItemView(BaseModel):
    item: Item
    currency: str
    request_id: str | None = None


class Created(BaseModel):
    item: Item
    created_by: str
    dry_run: bool


class SearchResult(BaseModel):
    items: list[Item]
    total: int


def check_key(key: str = Security(api_key_header)) -> str:
    if not secrets.compare_digest(key, API_KEY):
        raise HTTPException(status_code=401, detail="bad API key")
    return key


def check_user(credentials: HTTPBasicCredentials = Depends(basic)) -> str:
    ok = secrets.compare_digest(credentials.username, USER) and secrets.compare_digest(
        credentials.password, PASSWORD
    )
    if not ok:
        raise HTTPException(status_code=401, detail="bad user", headers={"WWW-Authenticate": "Basic"})
    return credentials.username


@app.get("/items/{item_id}", operation_id="getItem", summary="One item, priced in a currency")
def get_item(
    item_id: int,
    currency: str = Query("EUR", pattern="^[A-Z]{3}$"),
    x_request_id: str | None = Header(default=None),
    _key: str = Depends(check_key),
) -> ItemView:
    item = ITEMS.get(item_id)
    if item is None:
        raise HTTPException(status_code=404, detail="no such item")
    return ItemView(item=Item(**item), currency=currency, request_id=x_request_id)


@app.post(
    "/stores/{store}/items",
    operation_id="createItem",
    summary="Add an item to a store",
    status_code=201,
)
def create_item(
    store: str, item: NewItem, dry_run: bool = False, user: str = Depends(check_user)
) -> Created:
    new_id = max(ITEMS) + 1
    made = {"id": new_id, "store": store, **item.model_dump()}
    if not dry_run:
        ITEMS[new_id] = made
    return Created(item=Item(**made), created_by=user, dry_run=dry_run)


@app.get("/search", operation_id="searchItems", summary="Items having every tag")
def search(tag: list[str] = Query(default=[]), limit: int = Query(10, ge=1, le=100)) -> SearchResult:
    found = [Item(**i) for i in ITEMS.values() if all(t in i["tags"] for t in tag)]
    return SearchResult(items=found[:limit], total=len(found))


@app.get("/preferences", operation_id="getPreferences")
def preferences(session: str | None = Cookie(default=None)) -> dict:
    return {"session": session}


if __name__ == "__main__":
    uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning")
