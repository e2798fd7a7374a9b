"""A web page and a REST API for a trained run or an exported .onnx file: `pawsight serve RUN`.

`pawsight.serve.app.create_app(run_or_predictor)` builds the FastAPI app; it needs the `serve` extra
(`pip install "pawsight[serve]"`: FastAPI, uvicorn, python-multipart) and never PyTorch. Importing this
package imports neither, so `pawsight` without the extra still works.
"""
