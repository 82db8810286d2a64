"""A second real OpenAI client: LangChain's ChatOpenAI against the app, as an application built on LangChain
uses it: plain and streamed chat, tools bound with bind_tools (a named tool and "required"), and structured
output into a pydantic model."""

from __future__ import annotations

import pytest
from pydantic import BaseModel, Field

pytestmark = pytest.mark.app


class GetWeather(BaseModel):
    """Current weather of a city."""

    city: str = Field(max_length=20, description="The city")


class City(BaseModel):
    name: str = Field(max_length=24)
    country: str = Field(max_length=24)


@pytest.fixture(scope="module")
def chat(app_url, model_name):
    from langchain_openai import ChatOpenAI

    return ChatOpenAI(model=model_name, base_url=f"{app_url}/v1", api_key="unused", temperature=0, max_tokens=40,
                      max_retries=0, timeout=120)


def test_invoke_and_stream(chat):
    answer = chat.invoke("Say hello.")
    assert answer.content and answer.usage_metadata["output_tokens"] > 0
    assert "".join(chunk.content for chunk in chat.stream("Say hello."))


@pytest.mark.parametrize("tool_choice", ["GetWeather", "required"])
def test_bind_tools(chat, tool_choice):
    bound = chat.bind_tools([GetWeather], tool_choice=tool_choice, parallel_tool_calls=False)
    message = bound.invoke("What is the weather in Paris?")
    assert [call["name"] for call in message.tool_calls] == ["GetWeather"]
    assert set(message.tool_calls[0]["args"]) == {"city"} and message.tool_calls[0]["id"]


def test_structured_output(chat):
    city = chat.with_structured_output(City).invoke("Name a city in France.")
    assert isinstance(city, City) and city.name
