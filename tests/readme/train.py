"""The `train.py` of the README's `bigtrain run` commands: the seed example under data
parallel. The launcher runs it on every rank; `fit` joins the job and rank 0 reports."""
import bigtrain
from bigtrain.datasets import kjv_tfidf
from bigtrain.layers import Dense, Input
from bigtrain.models import Model

bigtrain.set_seed(0)
(x_train, y_train), (x_test, y_test) = kjv_tfidf(num_features=1000, num_classes=10)

input_layer = Input(shape=(1000,))
hidden_layer = Dense(512, activation="relu")(input_layer)
output_layer = Dense(10, activation="softmax")(hidden_layer)
model = Model(inputs=input_layer, outputs=output_layer)
model.compile(optimizer="adam", loss="categorical_crossentropy", metrics=["accuracy"])
model.fit(x_train, y_train, epochs=4, batch_size=32, strategy="ddp", verbose=0)

if bigtrain.is_main_process():
    loss, accuracy = model.evaluate(x_test, y_test)
    print(f"test accuracy {accuracy:.4f} on rank 0 of a data-parallel job", flush=True)
