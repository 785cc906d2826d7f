# score.py - Azure ML entry script for the end-to-end test (tests/azureml.rs), served by the real
# Azure ML inference server: `azmlinfsrv --entry_script tests/azureml/score.py`.
#
# The model is a real, tiny one, the same as scoregate's built-in sample model
# (src/sample_model.rs): multinomial logistic regression over the four iris features, with fixed
# weights fitted on the iris data set, and no dependency beyond the standard library.
#
# Input:  {"data": [[sepal_length, sepal_width, petal_length, petal_width], ...]}
# Output: {"predictions": ["setosa", ...], "probabilities": [[p_setosa, p_versicolor, p_virginica], ...]}
# Bad input raises, and azmlinfsrv answers 500 with `x-ms-run-function-failed: True`.
import json
import math

CLASSES = ["setosa", "versicolor", "virginica"]

# Rows: classes; columns: sepal length, sepal width, petal length, petal width.
COEF = [
    [-0.423, 0.967, -2.517, -1.079],
    [0.534, -0.321, -0.206, -0.944],
    [-0.111, -0.646, 2.723, 2.023],
]
INTERCEPT = [9.849, 2.238, -12.087]

model = None


def init():
    """Runs once per worker, before any request: "loads" the model."""
    global model
    model = {"coef": COEF, "intercept": INTERCEPT, "classes": CLASSES}


def predict(x):
    """Class probabilities for one flower (softmax of the linear scores)."""
    z = [model["intercept"][k] + sum(c * v for c, v in zip(model["coef"][k], x)) for k in range(3)]
    m = max(z)
    e = [math.exp(v - m) for v in z]
    s = sum(e)
    return [v / s for v in e]


def run(raw_data):
    """Scores a request body (a JSON string); raises on anything that is not 4 numbers a row."""
    data = json.loads(raw_data)
    rows = data.get("data") if isinstance(data, dict) else None
    if rows is None and isinstance(data, dict) and isinstance(data.get("input_data"), dict):
        rows = data["input_data"].get("data")
    if not isinstance(rows, list):
        raise ValueError('expected {"data": [[4 numbers], ...]}')
    predictions, probabilities = [], []
    for i, row in enumerate(rows):
        if (
            not isinstance(row, list)
            or len(row) != 4
            or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in row)
        ):
            raise ValueError(
                f"row {i} must be 4 numbers (sepal length, sepal width, petal length, petal width)"
            )
        p = predict([float(v) for v in row])
        predictions.append(CLASSES[max(range(3), key=lambda k: p[k])])
        probabilities.append([round(v, 4) for v in p])
    return {"predictions": predictions, "probabilities": probabilities}
