"""A tiny Streamlit app for tests/test_projector.py: every label-like element Streamlit draws,
once with labels far too long for their narrow column (container key "long": the overflow check
must report them) and once with short ones (key "short": it must report nothing)."""

import streamlit as st

LONG = "A label far too long for this narrow column on a projector screen"


def widgets(label: str, key: str, value: str, delta: str) -> None:
    cols = st.columns(6)
    with cols[0]:
        st.checkbox(label, key=f"{key}_checkbox")
        st.toggle(label, key=f"{key}_toggle")
    with cols[1]:
        st.radio(label, [label, "b"], key=f"{key}_radio")
        st.selectbox(label, ["x"], key=f"{key}_select")
    with cols[2]:
        st.slider(label, 0, 10, key=f"{key}_slider")
        st.number_input(label, key=f"{key}_number")
    with cols[3]:
        with st.expander(label):
            st.write("inside")
        st.metric(label, value, delta)
    with cols[4]:
        st.button(label, key=f"{key}_button")
        st.download_button(label, "x", key=f"{key}_download")
    with cols[5]:
        st.tabs([label, "b"])


st.title("Overflow probe")  # the tests wait for a page's title
with st.container(key="long"):
    widgets(LONG, "long", "12,345,678.9 units", "+1,234,567 units")
with st.container(key="short"):
    widgets("Label", "short", "12", "+1")
